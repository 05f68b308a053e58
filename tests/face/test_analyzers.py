"""`talkinghead.face.thread_face_analyzer`: one analyser per thread and settings, reused."""

from __future__ import annotations

import threading

import talkinghead.face as face


def test_an_analyser_is_built_once_per_thread_and_settings(monkeypatch, tmp_path):
    made = []

    def create(backend, aux_dir=None):
        made.append((backend, aux_dir))
        return object()

    monkeypatch.setattr(face, "create_face_analyzer", create)
    monkeypatch.setattr(face, "_THREAD_ANALYZERS", threading.local())
    first = face.thread_face_analyzer("mediapipe")
    assert face.thread_face_analyzer("mediapipe") is first
    assert face.thread_face_analyzer("mediapipe", tmp_path) is first  # mediapipe reads no files
    auto = face.thread_face_analyzer("auto", tmp_path)
    assert auto is not first and face.thread_face_analyzer("auto", str(tmp_path)) is auto
    assert face.thread_face_analyzer("auto", tmp_path / "other") is not auto
    other_thread = []
    worker = threading.Thread(
        target=lambda: other_thread.append(face.thread_face_analyzer("mediapipe"))
    )
    worker.start()
    worker.join()
    assert other_thread[0] is not first  # MediaPipe's graphs are not shared between threads
    assert [b for b, _ in made] == ["mediapipe", "auto", "auto", "mediapipe"]
