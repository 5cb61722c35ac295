from vmcluster.cli.main import main

main()
