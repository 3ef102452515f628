# A Rack app for Puma and Unicorn under sup. Both servers read LISTEN_FDS
# themselves (checking LISTEN_PID) and need no change; see puma.rb,
# puma-cluster.rb and unicorn.rb beside this file for the one line of
# configuration each wants.
#
#   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- puma -C examples/ruby/puma.rb examples/ruby/config.ru
run lambda { |env|
  body = "hello from #{ENV['SUP_SERVER'] || 'rack'} under sup worker #{ENV['SUP_WORKER']} " \
         "(pid #{Process.pid}, generation #{ENV['SUP_GENERATION']})\n"
  [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
}
