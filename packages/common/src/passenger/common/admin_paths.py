"""The admin API's endpoint paths, one name each: the helper agent serves them, the CLI
and the watchdog call them (see `passenger.helper_agent.admin_api` for what each does).

Plain strings and no imports: the watchdog pings the helper agent with one of them and
pays for every module it loads.
"""

PING = "/ping.json"                                   # GET
POOL = "/pool.json"                                   # GET
REQUESTS = "/requests.json"                           # GET
SERVER = "/server.json"                               # GET
BACKTRACES = "/backtraces.json"                       # GET
DETACH_PROCESS = "/pool/detach_process.json"          # POST {"pid": N}
RESTART_APP_GROUP = "/pool/restart_app_group.json"    # POST {"app_root_prefix": ...}
