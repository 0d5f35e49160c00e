from hpcai.entry import main

main()
