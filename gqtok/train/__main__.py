"""`python -m gqtok.train train|export ...` (the gqtok CLI has `gqtok train` / `export-model`)."""

from gqtok.train.command import main

main()
