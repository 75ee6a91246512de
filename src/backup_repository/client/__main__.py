"""``python -m backup_repository.client``: the same as the ``backup-maker`` command."""

import sys

from backup_repository.client.cli import main

sys.exit(main())
