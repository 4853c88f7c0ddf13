from tinytitan.cli import main

main()
