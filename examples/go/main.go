// A Go app under sup: serve the listener sup passes (fd 3, checked the
// systemd way), say READY=1 on NOTIFY_SOCKET, shut down gracefully on TERM.
//
//	cd examples/go && go build -o app . && sup --bind 127.0.0.1:8080 --ready notify -- ./app
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func notify(message string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	// Go's net package maps a leading '@' to Linux's abstract namespace itself.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Printf("notify: %v", err)
		return
	}
	defer conn.Close()
	conn.Write([]byte(message))
}

func main() {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") == "" {
		log.Fatal("no socket was passed; run me under sup --bind ADDR")
	}
	listener, err := net.FileListener(os.NewFile(3, "sup-socket"))
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from go worker %s (pid %d, generation %s)\n",
			os.Getenv("SUP_WORKER"), os.Getpid(), os.Getenv("SUP_GENERATION"))
	})}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	drained := make(chan struct{})
	go func() {
		<-stop
		server.Shutdown(context.Background())
		close(drained)
	}()
	notify("READY=1\nSTATUS=serving")
	if err := server.Serve(listener); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	// Serve returns as soon as Shutdown begins; exiting now would reset the
	// requests still in flight. Wait until they are answered.
	<-drained
}
