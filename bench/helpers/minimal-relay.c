/*
 * minimal-relay: the least a port-forward relay can do, as a yardstick for
 * bench/cri-stream-net.
 *
 *   minimal-relay NETNS PORT BUDGET_US
 *
 * Listens on 127.0.0.1 (an ephemeral port, printed on stdout) in the
 * network namespace it was started in; for each connection accepted, one
 * at a time, connects to 127.0.0.1:PORT inside the network namespace NETNS
 * (a path such as /proc/PID/ns/net: the pod's loopback, where berthd and
 * containerd connect for a port-forward) and copies bytes both ways until
 * either side closes. No protocol (no SPDY framing, no streams), no
 * threads, no allocation: one epoll loop, TCP_NODELAY on both sockets, and
 * after data moved epoll polled without sleeping for BUDGET_US (0: never),
 * as berthd's streaming thread does with its default `busy_poll_us`. What
 * a round trip through it costs above a direct one is what the machine
 * charges for the two extra hops; what berthd or containerd adds above it
 * is their own.
 *
 * Exits on SIGTERM (the bench kills it) or on an error, naming it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "minimal-relay: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void nodelay(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
		die("TCP_NODELAY");
}

static long long now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

/* Writes all of buf; the sockets are blocking, so a short write only means
 * a full send buffer. */
static int send_all(int fd, const char *buf, ssize_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		n -= w;
	}
	return 0;
}

/* Copies between a and b until either ends. */
static void relay(int ep, int a, int b, long long budget_us)
{
	static char buf[16 << 10];
	struct epoll_event ev = { .events = EPOLLIN };
	long long moved_at = 0;

	ev.data.fd = a;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev))
		die("epoll_ctl");
	ev.data.fd = b;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev))
		die("epoll_ctl");
	for (;;) {
		struct epoll_event got[2];
		int polling = budget_us > 0 && now_us() - moved_at < budget_us;
		int k = epoll_wait(ep, got, 2, polling ? 0 : -1);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < k; i++) {
			int from = got[i].data.fd, to = from == a ? b : a;
			ssize_t n = recv(from, buf, sizeof buf, MSG_DONTWAIT);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n <= 0 || send_all(to, buf, n))
				goto done;
			moved_at = now_us();
		}
	}
done:
	epoll_ctl(ep, EPOLL_CTL_DEL, a, NULL);
	epoll_ctl(ep, EPOLL_CTL_DEL, b, NULL);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: minimal-relay NETNS PORT BUDGET_US\n");
		return 2;
	}
	int port = atoi(argv[2]);
	long long budget_us = atoll(argv[3]);
	int netns = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (netns < 0)
		die(argv[1]);

	struct sockaddr_in any_port = { .sin_family = AF_INET,
					.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0 || bind(listener, (void *)&any_port, sizeof any_port) ||
	    listen(listener, 8))
		die("listening on 127.0.0.1");
	socklen_t len = sizeof any_port;
	if (getsockname(listener, (void *)&any_port, &len))
		die("getsockname");
	/* The listener stays in this namespace; every socket made from here on
	 * is the pod's. */
	if (setns(netns, CLONE_NEWNET))
		die("setns into the pod's network namespace");
	printf("%d\n", ntohs(any_port.sin_port));
	fflush(stdout);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct sockaddr_in pod = { .sin_family = AF_INET,
				   .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	for (;;) {
		int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
		if (client < 0) {
			if (errno == EINTR)
				continue;
			die("accept");
		}
		int upstream = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (upstream < 0)
			die("socket in the pod's network namespace");
		if (connect(upstream, (void *)&pod, sizeof pod) == 0) {
			nodelay(client);
			nodelay(upstream);
			relay(ep, client, upstream, budget_us);
		} else {
			fprintf(stderr, "minimal-relay: connecting to the pod's port %d: %s\n",
				port, strerror(errno));
		}
		close(upstream);
		close(client);
	}
}
