#!/usr/bin/env python3
"""Prints deploy/rabbitmq/definitions.json with the hashes of your passwords.

Usage: python3 deploy/rabbitmq/set-passwords.py [ENV_FILE] [-o OUTPUT]
       (ENV_FILE defaults to .env; without -o the result goes to stdout)

Keep the result out of the repository, for example
  python3 deploy/rabbitmq/set-passwords.py .env -o ~/.config/fleet/definitions.json
and set RABBITMQ_DEFINITIONS=~/.config/fleet/definitions.json in .env: the
compose broker then loads it instead of the committed file, whose hashes
belong to the placeholders of .env.example (a test checks that they do).

For every user `<name>` of deploy/rabbitmq/definitions.json, the password is
read from `RABBITMQ_PASSWORD_<NAME>` (upper case, '-' -> '_') in ENV_FILE and
stored as RabbitMQ's salted SHA-256 hash (rabbit_password_hashing_sha256):
base64(salt + sha256(salt + password)), with 4 random bytes of salt. The same
value comes out of `rabbitmqctl hash_password <password>` on RabbitMQ 3.13+.

RabbitMQ imports the file at every boot (rabbitmq.conf: load_definitions), so
`docker compose up -d --force-recreate rabbitmq` applies changed passwords.
"""

import base64
import hashlib
import json
import os
import pathlib
import sys

DEFINITIONS = pathlib.Path(__file__).with_name("definitions.json")


def variable(user: str) -> str:
    return "RABBITMQ_PASSWORD_" + user.upper().replace("-", "_")


def read_env(path: pathlib.Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def rabbit_hash(password: str) -> str:
    salt = os.urandom(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def main() -> int:
    args = sys.argv[1:]
    output = None
    if "-o" in args:
        at = args.index("-o")
        if at + 1 >= len(args):
            print(__doc__, file=sys.stderr)
            return 2
        output = pathlib.Path(args[at + 1]).expanduser()
        del args[at : at + 2]
    if len(args) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    env_file = pathlib.Path(args[0] if args else ".env")
    env = read_env(env_file)
    definitions = json.loads(DEFINITIONS.read_text())
    missing = []
    for user in definitions["users"]:
        name = variable(user["name"])
        if name not in env or not env[name]:
            missing.append(name)
            continue
        user["password_hash"] = rabbit_hash(env[name])
        user["hashing_algorithm"] = "rabbit_password_hashing_sha256"
    if missing:
        print(f"{env_file} lacks {', '.join(missing)}; nothing written", file=sys.stderr)
        return 1
    text = json.dumps(definitions, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"{output}: {len(definitions['users'])} password hashes written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
