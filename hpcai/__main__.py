from hpcai.cli.entry import main

main()
