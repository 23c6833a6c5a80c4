#!/usr/bin/env bash
# Start RabbitMQ and MariaDB if they are down (the commands the machine itself uses), and wait.
set -euo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5672; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached || true
fi
if ! up 3306; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
for _ in $(seq 1 90); do
    if up 5672 && up 3306; then
        rabbitmqctl await_startup >/dev/null 2>&1 || true
        echo "RabbitMQ and MariaDB are up"
        exit 0
    fi
    sleep 1
done
echo "RabbitMQ or MariaDB did not come up" >&2
exit 1
