/*
 * # server.ts's job in C with epoll: the floor the bench compares against
 *
 * Build: cc -O2 -o epoll_server bench/baselines/epoll_server.c
 * Run:   ./epoll_server [--hostname 127.0.0.1] [--port 0] [--backlog 511] [--idle S]
 *
 * bench/scale.ts compiles this at its start. It does what server.ts does,
 * with nothing a runtime adds: one non-blocking listening socket, accept4 in
 * a loop, SO_KEEPALIVE on every connection (and TCP_KEEPIDLE/TCP_KEEPINTVL
 * of S seconds with --idle S), one epoll for everything, and reads into ONE
 * shared static buffer, so an idle connection costs the kernel's socket and
 * 32 bytes here (its peer's address and a byte count). A read of 0 bytes is
 * the peer's FIN (peer-closed), ECONNRESET a reset, ETIMEDOUT unanswered
 * keepalive probes (timed-out); the connection is then closed.
 *
 * It prints one JSON line per event, with the names server.ts --json uses:
 * listening (address), accepted (peer, open), peer-closed, reset, timed-out,
 * error. Output is fully buffered and flushed once per epoll_wait batch, so
 * printing costs one write per batch, not one per event. IPv4 only. SIGTERM
 * ends it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* What is kept per connection, indexed by its descriptor. */
struct connection {
	char peer[24]; /* "255.255.255.255:65535" and a NUL */
	unsigned long long bytes;
};

static struct connection *connections; /* one slot per possible descriptor */
static int max_descriptors;
static int open_count;
static char shared_buffer[16 * 1024]; /* every read lands here; the bytes are only counted */

struct options {
	const char *hostname;
	int port;
	int backlog;
	int idle_seconds; /* 0: the system's keepalive times */
};

/* ## The command line */

static void usage_error(const char *message, const char *value)
{
	fprintf(stderr, "epoll_server: %s%s%s; usage: epoll_server [--hostname H] [--port N] "
			"[--backlog N] [--idle S]\n",
		message, value ? " " : "", value ? value : "");
	exit(2);
}

static int parse_integer(const char *flag, const char *text, int min, int max)
{
	char *end;
	long value;
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno || *text == '\0' || *end != '\0' || value < min || value > max)
		usage_error(flag, "takes an integer in range");
	return (int)value;
}

static struct options parse_options(int argc, char **argv)
{
	struct options options = {"127.0.0.1", 8888, 511, 0};
	for (int i = 1; i < argc; i++) {
		const char *flag = argv[i];
		if (i + 1 >= argc)
			usage_error("missing value after", flag);
		const char *value = argv[++i];
		if (strcmp(flag, "--hostname") == 0)
			options.hostname = value;
		else if (strcmp(flag, "--port") == 0)
			options.port = parse_integer(flag, value, 0, 65535);
		else if (strcmp(flag, "--backlog") == 0)
			options.backlog = parse_integer(flag, value, 1, 65535);
		else if (strcmp(flag, "--idle") == 0)
			options.idle_seconds = parse_integer(flag, value, 1, 32767);
		else
			usage_error("unknown flag", flag);
	}
	return options;
}

/* ## Listening */

static int listen_on(const struct options *options)
{
	struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(options->port)};
	if (inet_pton(AF_INET, options->hostname, &address.sin_addr) != 1)
		usage_error("--hostname must be an IPv4 address, not", options->hostname);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int on = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
	    bind(fd, (struct sockaddr *)&address, sizeof address) < 0 ||
	    listen(fd, options->backlog) < 0) {
		fprintf(stderr, "epoll_server: cannot listen on %s:%d: %s\n", options->hostname,
			options->port, strerror(errno));
		exit(1);
	}
	socklen_t length = sizeof address;
	getsockname(fd, (struct sockaddr *)&address, &length);
	printf("{\"event\":\"listening\",\"address\":\"%s:%d\"}\n", options->hostname,
	       ntohs(address.sin_port));
	return fd;
}

/* ## Accepting, and SO_KEEPALIVE on each connection */

static void set_keepalive(int fd, int idle_seconds)
{
	int on = 1;
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
	if (idle_seconds > 0) {
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds, sizeof idle_seconds);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle_seconds, sizeof idle_seconds);
	}
}

/* Takes every connection waiting in the backlog (the listener is level-triggered). */
static void accept_all(int listener, int epoll, const struct options *options)
{
	for (;;) {
		struct sockaddr_in peer;
		socklen_t length = sizeof peer;
		int fd = accept4(listener, (struct sockaddr *)&peer, &length,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == ECONNABORTED || errno == EINTR)
				continue; /* reset while it waited in the backlog */
			printf("{\"event\":\"error\",\"peer\":null,\"message\":\"accept: %s\"}\n",
			       strerror(errno));
			return; /* out of descriptors: the backlog keeps them until one closes */
		}
		if (fd >= max_descriptors) {
			close(fd);
			continue;
		}
		struct connection *connection = &connections[fd];
		char host[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &peer.sin_addr, host, sizeof host);
		snprintf(connection->peer, sizeof connection->peer, "%s:%d", host,
			 ntohs(peer.sin_port));
		connection->bytes = 0;
		set_keepalive(fd, options->idle_seconds);
		struct epoll_event interest = {.events = EPOLLIN, .data.fd = fd};
		epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &interest);
		open_count++;
		printf("{\"event\":\"accepted\",\"peer\":\"%s\",\"open\":%d}\n", connection->peer,
		       open_count);
	}
}

/* ## Reading until the end, and what each ending means */

static void end_connection(int fd, const char *event, int error)
{
	struct connection *connection = &connections[fd];
	if (error == 0 || error == ECONNRESET)
		printf("{\"event\":\"%s\",\"peer\":\"%s\",\"bytes\":%llu}\n", event,
		       connection->peer, connection->bytes);
	else if (error == ETIMEDOUT)
		printf("{\"event\":\"timed-out\",\"peer\":\"%s\",\"bytes\":%llu,"
		       "\"code\":\"ETIMEDOUT\"}\n",
		       connection->peer, connection->bytes);
	else
		printf("{\"event\":\"error\",\"peer\":\"%s\",\"message\":\"%s\"}\n",
		       connection->peer, strerror(error));
	close(fd); /* also takes it out of the epoll set */
	open_count--;
}

static void read_connection(int fd)
{
	ssize_t n = read(fd, shared_buffer, sizeof shared_buffer);
	if (n > 0)
		connections[fd].bytes += (unsigned long long)n; /* more comes with the next wait */
	else if (n == 0)
		end_connection(fd, "peer-closed", 0);
	else if (errno == ECONNRESET)
		end_connection(fd, "reset", ECONNRESET);
	else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		end_connection(fd, "error", errno);
}

/* ## The loop */

int main(int argc, char **argv)
{
	struct options options = parse_options(argc, argv);
	/* One write per batch of events, not one per line. */
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);

	struct rlimit limit;
	getrlimit(RLIMIT_NOFILE, &limit);
	max_descriptors = limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > 1 << 20
				  ? 1 << 20
				  : (int)limit.rlim_cur;
	/* calloc'd pages cost nothing until a connection with that number touches them. */
	connections = calloc((size_t)max_descriptors, sizeof *connections);

	int listener = listen_on(&options);
	int epoll = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event interest = {.events = EPOLLIN, .data.fd = listener};
	if (connections == NULL || epoll < 0 ||
	    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &interest) < 0) {
		fprintf(stderr, "epoll_server: cannot set up: %s\n", strerror(errno));
		return 1;
	}
	fflush(stdout);

	struct epoll_event ready[1024];
	for (;;) {
		int count = epoll_wait(epoll, ready, 1024, -1);
		if (count < 0 && errno == EINTR)
			continue;
		if (count < 0) {
			fprintf(stderr, "epoll_server: epoll_wait: %s\n", strerror(errno));
			return 1;
		}
		for (int i = 0; i < count; i++) {
			if (ready[i].data.fd == listener)
				accept_all(listener, epoll, &options);
			else
				read_connection(ready[i].data.fd);
		}
		fflush(stdout);
	}
}
