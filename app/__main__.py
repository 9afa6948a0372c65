from app.entrypoints.cli import main

main()
