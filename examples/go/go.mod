module example.com/sup-go-example

go 1.19
