from zoo.cli import entry

raise SystemExit(entry())
