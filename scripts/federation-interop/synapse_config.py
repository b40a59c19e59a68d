"""Edits a generated Synapse homeserver.yaml for federation on loopback with Hearth.

usage: synapse_config.py DIR CLIENT_PORT FEDERATION_PORT
"""
import sys

import yaml

d, client_port, fed_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = f"{d}/homeserver.yaml"
with open(path) as f:
    cfg = yaml.safe_load(f)
cfg["listeners"] = [
    {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
     "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]},
    {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
     "resources": [{"names": ["federation"], "compress": False}]},
]
cfg["tls_certificate_path"] = f"{d}/fed.crt"
cfg["tls_private_key_path"] = f"{d}/fed.key"
cfg["federation_verify_certificates"] = False
cfg["ip_range_blacklist"] = []
cfg["ip_range_whitelist"] = ["127.0.0.1/8"]
cfg["federation_ip_range_blacklist"] = []
cfg["trusted_key_servers"] = []
cfg["suppress_key_server_warning"] = True
cfg["pid_file"] = f"{d}/homeserver.pid"
cfg["database"] = {"name": "sqlite3", "args": {"database": f"{d}/homeserver.db"}}
cfg["enable_registration"] = True
cfg["enable_registration_without_verification"] = True
cfg["report_stats"] = False
cfg["presence"] = {"enabled": True}
relaxed = {"per_second": 100000, "burst_count": 1000000}
for key in ["rc_message", "rc_registration", "rc_admin_redaction", "rc_joins_per_room",
            "rc_room_creation", "rc_3pid_validation", "rc_third_party_invite", "rc_media_create"]:
    cfg[key] = dict(relaxed)
cfg["rc_login"] = {k: dict(relaxed) for k in ["address", "account", "failed_attempts"]}
cfg["rc_joins"] = {k: dict(relaxed) for k in ["local", "remote"]}
cfg["rc_invites"] = {k: dict(relaxed) for k in ["per_room", "per_user", "per_issuer"]}
cfg["rc_federation"] = {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 1,
                        "reject_limit": 100000, "concurrent": 1000}
cfg["log_config"] = f"{d}/log.config"
with open(path, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
with open(f"{d}/log.config", "w") as f:
    yaml.safe_dump({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": f"{d}/homeserver.log"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }, f)
