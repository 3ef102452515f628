# A Ruby app under sup, standard library only: serve the socket sup passes
# (fd 3, found the systemd way), say READY=1, stop gracefully on TERM.
#
#   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- ruby examples/ruby/app.rb
#
# Rack apps run under Puma unchanged instead: Puma reads LISTEN_FDS itself
# and sends READY=1 (sup --ready notify -- bundle exec puma).
require "socket"

unless ENV["LISTEN_PID"] == Process.pid.to_s && ENV["LISTEN_FDS"].to_i >= 1
  abort "app.rb: no socket was passed; run me under sup --bind ADDR"
end
server = Socket.for_fd(3)

def notify(message)
  path = ENV["NOTIFY_SOCKET"] or return
  path = "\0" + path[1..] if path.start_with?("@")
  sock = Socket.new(:UNIX, :DGRAM)
  sock.connect(Socket.pack_sockaddr_un(path))
  sock.write(message)
ensure
  sock&.close
end

stopping = false
Signal.trap("TERM") { stopping = true }
notify("READY=1\nSTATUS=serving")
until stopping
  ready = IO.select([server], nil, nil, 0.2) or next
  begin
    client, = server.accept_nonblock
  rescue IO::WaitReadable
    next
  end
  client.readpartial(4096) rescue nil
  body = "hello from ruby worker #{ENV["SUP_WORKER"]} (pid #{Process.pid}, generation #{ENV["SUP_GENERATION"]})\n"
  client.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}")
  client.close
end
