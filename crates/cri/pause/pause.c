/* berth-pause: PID 1 of a pod that shares one PID namespace among its
 * containers. It reaps the orphans that land on it and exits 0 on SIGINT
 * or SIGTERM, like Kubernetes' pause. No libc: raw syscalls only, so the
 * binary runs in an empty root filesystem. */

#if defined(__x86_64__)
#define NR_rt_sigprocmask 14
#define NR_rt_sigtimedwait 128
#define NR_wait4 61
#define NR_exit_group 231
static long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
#define NR_rt_sigprocmask 135
#define NR_rt_sigtimedwait 137
#define NR_wait4 260
#define NR_exit_group 94
static long sys4(long n, long a, long b, long c, long d)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3)
			 : "memory");
	return x0;
}
#else
#error "berth-pause: unsupported architecture"
#endif

#define SIGINT 2
#define SIGTERM 15
#define SIGCHLD 17
#define WNOHANG 1
#define BIT(s) (1UL << ((s)-1))

void _start(void)
{
	unsigned long set = BIT(SIGINT) | BIT(SIGTERM) | BIT(SIGCHLD);
	/* Blocked signals stay pending even when their default is to be
	 * ignored, so sigtimedwait sees every SIGCHLD. */
	sys4(NR_rt_sigprocmask, 0 /* SIG_BLOCK */, (long)&set, 0, 8);
	for (;;) {
		long sig = sys4(NR_rt_sigtimedwait, (long)&set, 0, 0, 8);
		if (sig == SIGINT || sig == SIGTERM)
			sys4(NR_exit_group, 0, 0, 0, 0);
		while (sys4(NR_wait4, -1, 0, WNOHANG, 0) > 0)
			;
	}
}
