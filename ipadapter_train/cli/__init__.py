"""The `ipadapter-train` command: its subcommands, flags, progress bars and summary lines.

A new subcommand or flag goes here (`main.py` parses, `training.py` / `generation.py` run them, `demo.py` is the
main job); the work itself is done through the front door, `ipadapter_train.api`, or the wing that owns it.
"""
