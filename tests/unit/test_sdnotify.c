/*
 * Unit tests for core/sdnotify.c: the sd_notify datagram (to a path and to
 * an abstract name), the watchdog's environment, and the watchdog itself
 * with two workers, one of which never runs its mailbox: the pings stop
 * while it is wedged and come back when it runs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "mailbox.h"
#include "sdnotify.h"
#include "server.h"

static int sock = -1;
static char path[108];

/* A notify socket, as systemd makes one; abstract: "@name". */
static void listen_on(int abstract)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;
    char name[80];
    snprintf(name, sizeof name, "rhema-test-sdnotify-%ld-%d", (long)getpid(), abstract);
    if (abstract) {
        snprintf(path, sizeof path, "@%s", name);
        memcpy(sa.sun_path + 1, name, strlen(name));
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    } else {
        const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(path, sizeof path, "%s/%s.sock", tmp, name);
        unlink(path);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        len = sizeof sa;
    }
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(sock >= 0);
    assert_int_equal(bind(sock, (struct sockaddr *)&sa, len), 0);
    setenv("NOTIFY_SOCKET", path, 1);
}

static void stop_listening(void)
{
    close(sock);
    sock = -1;
    if (path[0] == '/')
        unlink(path);
    unsetenv("NOTIFY_SOCKET");
}

/* The next datagram, or NULL when none is waiting. */
static const char *next_message(void)
{
    static char buf[2048];
    ssize_t n = recv(sock, buf, sizeof buf - 1, 0);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

static void test_notify(void **state)
{
    (void)state;
    for (int abstract = 0; abstract < 2; abstract++) {
        listen_on(abstract);
        assert_int_equal(rhema_sd_notifyf("READY=1\nSTATUS=serving on %s\n", "127.0.0.1:1"), 1);
        assert_string_equal(next_message(), "READY=1\nSTATUS=serving on 127.0.0.1:1\n");
        assert_null(next_message());
        stop_listening();
    }
    assert_int_equal(rhema_sd_notifyf("READY=1\n"), 0); /* no NOTIFY_SOCKET: nothing to do */
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(rhema_sd_notifyf("READY=1\n"), -1);
    setenv("NOTIFY_SOCKET", "/nonexistent/rhema-test.sock", 1);
    assert_int_equal(rhema_sd_notifyf("READY=1\n"), -1);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_usec(void **state)
{
    char pid[24];
    (void)state;
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_true(rhema_sd_watchdog_usec() == 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_true(rhema_sd_watchdog_usec() == 30000000u);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_true(rhema_sd_watchdog_usec() == 30000000u);
    setenv("WATCHDOG_PID", "1", 1); /* another process's */
    assert_true(rhema_sd_watchdog_usec() == 0);
    unsetenv("WATCHDOG_PID");
    static const char *const bad[] = {"", "0", "-5", "12x", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("WATCHDOG_USEC", bad[i], 1);
        assert_true(rhema_sd_watchdog_usec() == 0);
    }
    unsetenv("WATCHDOG_USEC");
}

/* Run base for ms milliseconds of wall-clock time (at least). */
static void run_for(struct event_base *base, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static int count_pings(void)
{
    const char *m;
    int n = 0;
    while ((m = next_message())) {
        assert_string_equal(m, "WATCHDOG=1\n");
        n++;
    }
    return n;
}

static void test_watchdog_wedged_worker(void **state)
{
    struct rhema_server srv;
    struct rhema_worker w[2];
    (void)state;
    memset(&srv, 0, sizeof srv);
    memset(w, 0, sizeof w);
    evthread_use_pthreads();
    struct event_base *main_base = event_base_new(), *stuck_base = event_base_new();
    assert_non_null(main_base);
    assert_non_null(stuck_base);
    /* worker 0 runs (its mailbox is on the main base), worker 1 never does */
    assert_int_equal(rhema_mailbox_init(&w[0].mailbox, main_base), 0);
    assert_int_equal(rhema_mailbox_init(&w[1].mailbox, stuck_base), 0);
    srv.workers = w;
    srv.nworkers = 2;
    listen_on(0);
    setenv("WATCHDOG_USEC", "100000", 1); /* a tick every 50 ms */
    unsetenv("WATCHDOG_PID");

    assert_int_equal(rhema_sd_watchdog_start(&srv, main_base), 0);
    assert_int_equal(count_pings(), 1); /* the first, at once */
    /* longer than a period: worker 1's ping is older than a period from here on */
    run_for(main_base, 300);
    count_pings();
    run_for(main_base, 300);
    assert_int_equal(count_pings(), 0); /* wedged: no pings at all */
    /* worker 1 runs its mailbox: the pings come back */
    rhema_mailbox_drain(&w[1].mailbox);
    int n = 0;
    for (int i = 0; i < 100 && n == 0; i++) {
        run_for(main_base, 100);
        n = count_pings();
    }
    assert_true(n > 0);

    rhema_sd_watchdog_stop();
    rhema_mailbox_release(&w[0].mailbox);
    rhema_mailbox_release(&w[1].mailbox);
    rhema_sd_watchdog_free();
    event_base_free(stuck_base);
    event_base_free(main_base);
    stop_listening();
    unsetenv("WATCHDOG_USEC");
}

static void test_watchdog_off(void **state)
{
    struct rhema_server srv;
    (void)state;
    memset(&srv, 0, sizeof srv);
    struct event_base *base = event_base_new();
    listen_on(0);
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(rhema_sd_watchdog_start(&srv, base), 0);
    run_for(base, 50);
    assert_null(next_message());
    rhema_sd_watchdog_free();
    event_base_free(base);
    stop_listening();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_watchdog_usec),
        cmocka_unit_test(test_watchdog_wedged_worker),
        cmocka_unit_test(test_watchdog_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
