"""``backup-maker``: the backup client, compatible with the reference project's Backup Maker.

It runs a command, encrypts its output with the ``gpg`` binary in a throw-away keyring and
streams the ciphertext to the server (``make``); it downloads, verifies, decrypts and pipes a
version into a command (``restore``) or a file (``download``). ``login``, ``versions`` and
``collections`` are additions of our own. See ``docs/client.md``.
"""
