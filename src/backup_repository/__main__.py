from backup_repository.cli.server import main

if __name__ == "__main__":
    main()
