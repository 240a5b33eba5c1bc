from codexexec.cli import main

main()
