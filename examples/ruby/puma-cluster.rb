# Puma in cluster mode under sup: each sup worker is a Puma master with
# its own forked workers. The master sends READY=1 once they are booted.
#
#   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- puma -C examples/ruby/puma-cluster.rb examples/ruby/config.ru
bind_to_activated_sockets 'only'
queue_requests false
workers 2
