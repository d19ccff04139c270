from fastar.cli import main

main()
