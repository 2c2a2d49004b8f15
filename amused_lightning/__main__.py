import sys

from amused_lightning.cli import cli_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        from amused_lightning.export import main

        main(sys.argv[2:])
    else:
        cli_main()
