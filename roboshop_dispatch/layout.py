"""Every host path dispatchctl reads or writes, in one place.

Steps, diagnostics, status and the CLI take their paths from here (or from the installed state,
which starts from here); nothing else spells a host path. The consumer does not import this
module: it learns its paths from its environment (``$CREDENTIALS_DIRECTORY``).
"""

from __future__ import annotations

from pathlib import Path

# the service
UNIT_NAME = "dispatch.service"
UNIT_DIR = Path("/etc/systemd/system")
UNIT_PATH = UNIT_DIR / UNIT_NAME
# several instances on one host (--instances N > 1): the template unit dispatch@.service, run as
# dispatch@1.service .. dispatch@N.service; N = 1 keeps dispatch.service (the manual's name)
TEMPLATE_NAME = "dispatch@.service"
TEMPLATE_PATH = UNIT_DIR / TEMPLATE_NAME
INSTANCE_PREFIX = "dispatch@"
# one instance per core is the useful range; past 64 the processes only compete for the same
# cores and each holds its own AMQP connection (a broker's connection budget is shared by all)
MAX_INSTANCES = 64

# its settings and its secret
CONFIG_DIR = Path("/etc/roboshop")
ENV_FILE = CONFIG_DIR / "dispatch.env"
# the AMQP password as a systemd credential (LoadCredential=NAME:PATH), root-only 0600;
# the consumer reads it from $CREDENTIALS_DIRECTORY/NAME (consumer/config.py spells NAME too)
CREDENTIAL_NAME = "amqp-pass"
CREDENTIAL_FILE = CONFIG_DIR / "dispatch.amqp-pass"
# systemd's credential stores, searched for LoadCredential=ID without an absolute path
CREDSTORE_DIRS = (Path("/etc/credstore"), Path("/run/credstore"), Path("/usr/lib/credstore"))
# the OTLP exporter's headers (--otlp-header: a token, a secret) as the systemd credential NAME,
# root-only 0600 (consumer/config.py spells NAME too); systemd < 247: OTEL_EXPORTER_OTLP_HEADERS in ENV_FILE
OTLP_HEADERS_CREDENTIAL = "otlp-headers"
OTLP_HEADERS_FILE = CONFIG_DIR / "dispatch.otlp-headers"
# how many instances are configured (one line, the number; root, 0644): read by `start`,
# `status` and `check`; changing it restarts nothing
INSTANCES_FILE = CONFIG_DIR / "dispatch.instances"
# LoadCredential= exists since systemd 247: older hosts keep AMQP_PASS in ENV_FILE (0600)
CREDENTIALS_MIN_SYSTEMD = 247

# the application (shared with the other RoboShop services on a host: /app and the user)
APP_DIR = Path("/app")
SERVICE_USER = "roboshop"
BINARY_NAME = "dispatch"
BUILD_STAMP_NAME = ".dispatch-build.json"
# the interpreter that runs the bundled zipapp (its ExecStart=)
PYTHON = "/usr/bin/python3"
# where the go flavour's build finds go (Debian's golang-go, RHEL's golang, a tarball in /usr/local)
GO_CANDIDATES = ("/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go", "/usr/lib/golang/bin/go")
# the service user's shell: RHEL's own system accounts (and its docs) spell /sbin/nologin, Debian's
# /usr/sbin/nologin; /bin/false where there is neither
NOLOGIN_CANDIDATES = ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin")
NOLOGIN_BY_FAMILY = {"rhel": ("/sbin/nologin", "/usr/sbin/nologin"), "debian": ("/usr/sbin/nologin", "/sbin/nologin")}
NO_SHELL = "/bin/false"

# dispatchctl's own state
STATE_DIR = Path("/var/lib/dispatchctl")
CREATED_RECORD = STATE_DIR / "created.json"  # what dispatchctl created (uninstall --purge removes only that)
# the last good generation (binary, unit or template, drop-ins, environment file, credential, count),
# kept by every change that restarts dispatch, for its rollback: root-only (0700 dirs, 0600 files),
# one directory per generation and two pointer files naming them (steps/generation.py)
GENERATIONS_DIR = STATE_DIR / "generations"
KEPT_POINTER = GENERATIONS_DIR / "kept"  # the generation `dispatchctl rollback` returns to
STAGED_POINTER = GENERATIONS_DIR / "staged"  # the one running while a change is being applied
# a restarted instance's time to report READY=1 (once it consumes) before the change is rolled back:
# this, plus some for each further AMQP host (the consumer tries them in turn, 10 s each at most)
READY_TIMEOUT_S = 30
READY_TIMEOUT_PER_HOST_S = 10
# a Type=simple unit (the go flavour) has no READY: its started main process must outlive this
# (a bad binary, a missing library or a fatal error at start ends it within tens of ms)
SIMPLE_SETTLE_S = 0.2
CACHE_DIR = Path("/var/cache/dispatchctl")
RENDER_CACHE = CACHE_DIR / "rendered.json"
BUNDLE_CACHE = CACHE_DIR / "bundle.json"
GO_CACHE = CACHE_DIR / "go"
# the go flavour builds in a private directory of ours (root, 0700), never in the shared app dir,
# and keeps the sources of the last build there (/app/src is other services' to use)
GO_BUILD_DIR = CACHE_DIR / "go-build"
GO_SOURCES = CACHE_DIR / "go-src"
RUN_DIR = Path("/run/dispatchctl")
CHANGE_LOCK = RUN_DIR / "lock"
RESTART_PENDING = RUN_DIR / "restart-pending"
# the run log, in a directory of root's alone (root 0700): /var/log itself is group-writable on
# some distributions (Ubuntu: root:syslog 0775), where a link or a FIFO could be planted at it
LOG_DIR = Path("/var/log/dispatchctl")
LOG_FILE = LOG_DIR / "dispatchctl.log"
LEGACY_LOG_FILE = Path("/var/log/dispatchctl.log")  # 0.4 and earlier: moved into LOG_DIR by the first run
