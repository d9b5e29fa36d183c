from eraselab.cli import main

main()
