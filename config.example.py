# meshbot configuration: copy to config.py and edit. Every key is shown with its default.
# Check it with: python main.py --config config.py --check-config  (exit 0, or 78 naming the key)

# --- The node link ---------------------------------------------------------
# How the bot reaches the node: its TCP API (Wi-Fi, Ethernet) or a USB serial port. Expected: one of 'tcp', 'serial'.
CONNECTION = 'tcp'
# Hostname or IP of the node's TCP API, e.g. '192.168.1.38' (required for tcp, unless --demo); '192.168.1.38:4403' sets NODE_PORT too. Expected: a hostname or IP like '192.168.1.38' or 'meshtastic.local', optionally with ':port'.
NODE_HOST = ''
# TCP port of the node's API. Expected: an integer from 1 to 65535.
NODE_PORT = 4403
# The node's serial device when CONNECTION is 'serial' ('auto': the one USB serial device found). Expected: a device path like '/dev/ttyUSB0' or '/dev/serial/by-id/...', or 'auto'.
# e.g. SERIAL_PORT = '/dev/serial/by-id/usb-1a86_USB_Single_Serial_54FC0012345-if00'
SERIAL_PORT = 'auto'
# Give up one connect + config handshake after this long. Expected: a number from 0.5 to 300.
CONNECT_TIMEOUT_S = 10.0
# Send a heartbeat to the node this often. Expected: a number from 0.2 to 600.
PROBE_INTERVAL_S = 20.0
# No frame from the node for this long means the link is dead. Expected: a number from 0.5 to 3600.
LINK_TIMEOUT_S = 45.0
# First reconnect delay; doubles (with jitter) per failed attempt. Expected: a number from 0.05 to 600.
RECONNECT_MIN_S = 0.5
# Longest reconnect delay. Expected: a number from 0.05 to 3600.
RECONNECT_MAX_S = 5.0
# Delay when another client (phone app, CLI) keeps taking the node's TCP API. Expected: a number from 0.1 to 3600.
CONTENTION_BACKOFF_S = 60.0

# --- Sending ---------------------------------------------------------------
# Your own least time between two texts, on top of the firmware's 2 s limit, which the bot always keeps on firmware 2.7 and later (counted as the node sees it). Expected: a number from 0 to 600.
MIN_TEXT_INTERVAL_S = 0.0
# Also wait the previous text's time on air (from the node's LoRa preset). Expected: True or False.
PACE_BY_AIRTIME = True
# Largest text, in bytes of UTF-8. Expected: an integer from 40 to 228.
MAX_TEXT_BYTES = 200
# Most texts one reply may be split into. Expected: an integer from 1 to 10.
MAX_CHUNKS = 4
# A text not sent after this long is dropped (with a WARNING). Expected: a number from 1 to 86400.
OUTBOX_TTL_S = 300.0
# Most texts waiting to be sent; past it the oldest is dropped. Expected: an integer from 1 to 10000.
OUTBOX_MAX = 50
# A DM nobody acknowledged (ACK or NAK) within this long counts as unconfirmed. Expected: a number from 1 to 3600.
DM_ACK_TIMEOUT_S = 60.0
# Times a DM whose delivery failed (NAK) is sent again with a new id (0: never). Expected: an integer from 0 to 5.
DM_RETRIES = 1
# Wait after a failed DM before sending it again. Expected: a number from 1 to 3600.
DM_RETRY_DELAY_S = 30.0

# --- Airtime budget and channel governor -----------------------------------
# Most of any rolling hour the bot's own texts may be on the air, in % (past it texts wait in the outbox); any 10 minutes hold at most a third of it. Expected: a number from 0.1 to 100.
AIRTIME_BUDGET_PCT = 5.0
# Channel utilization (as the node reports it) over which broadcasts wait and a channel command gets one text. Expected: a number from 0 to 100.
CHANNEL_UTIL_POLITE_PCT = 25.0
# Channel utilization over which the bot sends DM replies only. Expected: a number from 0 to 100.
CHANNEL_UTIL_MAX_PCT = 40.0

# --- Receiving -------------------------------------------------------------
# Worker threads running command handlers. Expected: an integer from 1 to 64.
HANDLER_THREADS = 4
# Longest a command's handler may run: past it the user gets 'timed out' and the call is written off. Expected: a number from 0.1 to 600.
HANDLER_TIMEOUT_S = 30.0
# Packets waiting for a worker; past it new packets are dropped. Expected: an integer from 10 to 100000.
INBOUND_QUEUE_MAX = 1000
# Most nodes kept in the node DB; past it the least recently heard is forgotten (favourites and nodes with a public key last). Expected: an integer from 10 to 100000.
NODE_DB_MAX = 2000

# --- Commands --------------------------------------------------------------
# A packet seen again (same sender and id), or an echo of our own broadcast, within this is ignored. Expected: a number from 1 to 86400.
DEDUP_WINDOW_S = 600.0
# Commands one sender may send per window (admins, authenticated: 4 times that). Expected: an integer from 1 to 10000.
RATE_LIMIT_COUNT = 5
# The rate limit's window. Expected: a number from 1 to 86400.
RATE_LIMIT_WINDOW_S = 60.0
# Node ids allowed to run admin commands (/bc), each optionally pinned to its public key. Expected: a list of node ids like '!a1b2c3d4', each optionally followed by its public key: '!a1b2c3d4 <base64 key>'.
# e.g. ADMIN_NODES = ['!a1b2c3d4', '!0badc0de pU7XmYQw8b0eEtL2hGJ0mVqk6Zc4y9sX1rN5tA3vQ3c=']
ADMIN_NODES = ()
# Admin commands count only in PKI-encrypted DMs (a node id is forged easily on a public channel). Expected: True or False.
REQUIRE_PKI_FOR_ADMIN = True
# Channel index /bc broadcasts on. Expected: an integer from 0 to 7.
BROADCAST_CHANNEL = 0
# Broadcasts fired on a timetable ('at' is a time of day in TIMEZONE). Expected: a list of entries like {'at': '07:30', 'text': '...'} or {'every_s': 3600, 'command': '/weather'}, each with an optional 'channel' (0-7).
# e.g. SCHEDULED_BROADCASTS = [{'at': '07:30', 'text': 'good morning mesh'}, {'every_s': 3600, 'command': '/status', 'channel': 1}]
SCHEDULED_BROADCASTS = ()
# Time zone of the schedule's 'at' times, daylight saving time included ('': the system's zone, from /etc/localtime). Expected: an IANA time zone name like 'Europe/Paris' or 'America/New_York', or '' for the system's zone.
# e.g. TIMEZONE = 'Europe/Paris'
TIMEZONE = ''
# Commands turned off, built-in or from a plugin, by name (an unknown name is a WARNING). Expected: a list of command names like ['bc', 'weather'].
# e.g. DISABLED_COMMANDS = ['bc', 'echo']
DISABLED_COMMANDS = ()

# --- Sharing the node ------------------------------------------------------
# Serve the node's TCP API here to the phone app, the meshtastic CLI and other clients, over the bot's one connection. Expected: '' (off), or 'host:port' like '0.0.0.0:4403', '127.0.0.1:4404' or '[::]:4403'.
# e.g. API_LISTEN = '0.0.0.0:4403'
API_LISTEN = ''
# Most clients of API_LISTEN at once; more are refused. Expected: an integer from 1 to 64.
API_MAX_CLIENTS = 8
# What API clients may do to the node: 'read' only get_* admin requests, 'full' everything (set, reboot...), 'none' no admin at all. Expected: one of 'read', 'full', 'none'.
API_ADMIN = 'read'
# Under API_ADMIN 'read' or 'none', still give API clients the channel keys (PSKs), which an app needs to show a channel's key or QR code; the node's private and admin keys and its passwords are removed regardless. Expected: True or False.
API_SHARE_CHANNEL_KEYS = False
# Client addresses API_LISTEN accepts, as addresses or networks (empty: any); others are closed at once. Expected: a list of addresses or networks like ['127.0.0.1', '192.168.1.0/24', 'fd00::/8'], or () for any.
# e.g. API_ALLOW = ['127.0.0.1', '192.168.1.0/24']
API_ALLOW = ()
# Share of AIRTIME_BUDGET_PCT that API clients' packets may use together; the rest is kept for the bot's replies. Expected: a number from 0 to 100.
API_AIRTIME_SHARE_PCT = 50.0

# --- Weather ---------------------------------------------------------------
# Open-Meteo forecast API that /weather asks. Expected: an http:// or https:// URL.
WEATHER_API_URL = 'https://api.open-meteo.com/v1/forecast'
# Open-Meteo geocoding API that turns a place name into coordinates. Expected: an http:// or https:// URL.
GEOCODING_API_URL = 'https://geocoding-api.open-meteo.com/v1/search'
# Place /weather reports when the user names none (empty: /weather needs a place). Expected: a place name like 'Lyon', or 'lat,lon' in decimal degrees, like '45.76,4.84'.
# e.g. DEFAULT_LOCATION = '45.76,4.84'
DEFAULT_LOCATION = ''
# Units /weather asks the API for: metric (°C, km/h, mm) or imperial (°F, mph, inch). Expected: one of 'metric', 'imperial'.
UNITS = 'metric'
# A weather answer is reused this long for the same place (within ~1 km) and kind. Expected: a number from 0 to 86400.
WEATHER_CACHE_S = 600.0
# Longest wait for one weather or geocoding request, its one retry included. Expected: a number from 0.1 to 60.
WEATHER_TIMEOUT_S = 8.0
# Most HTTP requests to the weather and geocoding APIs in any 24 hours, all users together (past it: cached answers, else 'busy'). Expected: an integer from 1 to 1e+06.
WEATHER_MAX_CALLS_PER_DAY = 5000

# --- State -----------------------------------------------------------------
# Directory of the state database (the outbox, the commands answered, the counters), kept across restarts; '': systemd's $STATE_DIRECTORY when set, else ./state; ':memory:': keep nothing. Expected: a directory path, '' or ':memory:'.
STATE_DIR = ''

# --- Logging ---------------------------------------------------------------
# Log level. Expected: one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'.
LOG_LEVEL = 'INFO'

# --- Monitoring ------------------------------------------------------------
# Where to serve Prometheus metrics over HTTP (see docs/metrics.md; an address that cannot be used is one WARNING, and the bot runs on without them). Expected: '' (off), or 'host:port' like '127.0.0.1:9464', '0.0.0.0:9464' or '[::1]:9464'.
# e.g. METRICS_LISTEN = '127.0.0.1:9464'
METRICS_LISTEN = ''
