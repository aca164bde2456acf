from hpcsgd.cli import main

main()
