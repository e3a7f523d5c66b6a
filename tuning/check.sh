#!/usr/bin/env bash
# Compares this machine with tuning/sysctl.conf and the limits Horizon needs, and prints what to
# change. Read-only; exit status 0 when nothing needs changing, 1 otherwise.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
todo=0

trim() { local v="$*"; v="${v#"${v%%[![:space:]]*}"}"; echo "${v%"${v##*[![:space:]]}"}"; }
while IFS='=' read -r key want; do
    case "$key" in \#*|"") continue ;; esac
    key=$(trim "$key")
    want=$(trim "$want")
    file="/proc/sys/${key//./\/}"
    if [ ! -r "$file" ]; then
        echo "?    $key: not available on this kernel"
        continue
    fi
    have=$(tr -s '[:space:]' ' ' <"$file")
    have=$(trim "$have")
    ok=1
    case "$key" in
        net.ipv4.ip_local_port_range|net.ipv4.tcp_mem|net.ipv4.tcp_rmem|net.ipv4.tcp_wmem|kernel.io_uring_disabled)
            [ "$have" = "$want" ] || ok=0 ;;
        net.ipv4.tcp_keepalive_*)
            # Timers: at most the recommended value.
            [ "$have" -le "$want" ] 2>/dev/null || ok=0 ;;
        net.ipv4.tcp_tw_reuse)
            # 1 (all) or 2 (loopback only) both reuse.
            [ "$have" -ge 1 ] 2>/dev/null || ok=0 ;;
        *)
            # Numeric: at least the recommended value.
            [ "$have" -ge "$want" ] 2>/dev/null || ok=0 ;;
    esac
    if [ "$ok" = 1 ]; then
        echo "ok   $key = $have"
    else
        echo "SET  $key = $want   (now: $have)   sysctl -w $key=\"$want\""
        todo=1
    fi
done <sysctl.conf

nofile_soft=$(ulimit -S -n)
nofile_hard=$(ulimit -H -n)
if [ "$nofile_hard" != unlimited ] && [ "$nofile_hard" -lt 1048576 ]; then
    echo "SET  open files (hard) = 1048576   (now: $nofile_hard)   LimitNOFILE= in the unit, or tuning/limits.conf"
    echo "     until then: one node holds at most ~$((nofile_hard - 100)) sockets; run several nodes on one port (SO_REUSEPORT)"
    todo=1
else
    echo "ok   open files (hard) = $nofile_hard (soft $nofile_soft)"
fi
memlock=$(ulimit -l)
if [ "$memlock" != unlimited ] && [ "$memlock" -lt 65536 ]; then
    echo "SET  memlock = unlimited   (now: ${memlock} KiB)   LimitMEMLOCK=infinity; io_uring may fall back to epoll"
    todo=1
else
    echo "ok   memlock = $memlock"
fi
cores=$(nproc)
echo "info $cores online CPUs: horizon runs $cores shards by default (one per core)"
exit $todo
