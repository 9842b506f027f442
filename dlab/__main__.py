from dlab.cli import main

main()
