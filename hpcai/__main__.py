from hpcai.cli import main

main()
