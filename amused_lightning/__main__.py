import sys

from amused_lightning.cli import cli_main

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "export":
        from amused_lightning.export import main

        main(sys.argv[2:])
    elif command == "generate":
        from amused_lightning.generate import main

        main(sys.argv[2:])
    else:
        cli_main()
