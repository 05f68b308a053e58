"""The creator's app (`talkinghead app`): a Gradio page over the Ditto pipeline.

`generation` holds what runs (the CLI's checks, one pipeline per process) and imports
no gradio; `ui.build_app` builds the page. An application layer, like `serve`.
"""

from talkinghead.app.generation import AppSettings, Generator, Request

__all__ = ["AppSettings", "Generator", "Request"]
