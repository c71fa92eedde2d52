from fedgckd.cli import main

main()
