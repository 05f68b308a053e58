from talkinghead.cli import main

main()
