# Puma (single mode) under sup:
#
#   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- puma -C examples/ruby/puma.rb examples/ruby/config.ru
#
# Serve only the sockets sup passes (LISTEN_FDS); without this line Puma
# also binds its default tcp://0.0.0.0:9292 itself.
bind_to_activated_sockets 'only'
# Puma's reactor reads requests from connections it has accepted; on TERM it
# closes the ones it has not started on. Handing each connection straight to
# a thread means nothing accepted is left unanswered at a graceful stop.
queue_requests false
