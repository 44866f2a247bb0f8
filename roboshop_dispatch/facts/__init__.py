"""Facts first: everything dispatchctl knows about a host, read once, in one place, by one parser
each, into plain immutable values that record to JSON and back (so every decision downstream is
a pure function, unit-tested from recorded facts).

- :mod:`.host`: the host itself (os-release, root, systemd as PID 1 and its version, SELinux)
- :mod:`.paths`: ``lstat`` of dispatch's paths (never following a link), the service user, a
  binary's flavour, its build stamp and SELinux label
- :mod:`.unitfile`: the unit file and its drop-ins (``ExecStart=``, ``User=``, ``LoadCredential=``)
- :mod:`.instances`: ``dispatch.service`` and every ``dispatch@N.service`` with its state
- :mod:`.installed`: the installed dispatch as a whole (:class:`~.installed.InstalledState`)

Nothing here decides or prints; the settings remembered from an installation are
:func:`roboshop_dispatch.sources.remembered` (beside the other sources of a setting).
"""
