from eraselab.cli_support import main

main()
