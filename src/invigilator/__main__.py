from invigilator.cli import main

main()
