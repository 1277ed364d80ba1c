"""The ``mpsnode`` command line: ``main`` parses and dispatches; ``node``, ``client`` and
``verifier`` hold the subcommands; ``common`` the helpers they share."""
