# Thin wrappers around ./dev, for those who type `make`.
.PHONY: up test bench
up:
	./dev up
test:
	./dev test
bench:
	./dev bench
