# Unicorn under sup. Unicorn reads LISTEN_FDS itself; give it no `listen`
# line, or it binds that address as well. Its graceful stop is QUIT (TERM
# stops at once), and it sends no readiness: use a delay.
#
#   sup --bind 127.0.0.1:8080 --workers 2 --stop-signal QUIT --ready delay:2s -- unicorn -c examples/ruby/unicorn.rb examples/ruby/config.ru
worker_processes 2
