/*
 * test_targets -- the allow-list rules of core/targets.c (issue 17, item
 * 14): what parses and what is refused with which message, block and
 * port-range matching for IPv4 and IPv6, IPv4-mapped addresses, lists.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <rhema/plugin.h>

#include "targets.h"

/* The socket address of an IP literal and port (the test's own input: must parse). */
static struct sockaddr_storage addr(const char *host, unsigned port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(rhema_target_sockaddr(host, port, &ss, &len), 0);
    return ss;
}

/* Does rule `text` admit host:port? */
static int admits(const char *text, const char *host, unsigned port)
{
    struct rhema_target_rule r;
    char err[RHEMA_ERRMSG_MAX];
    struct sockaddr_storage ss = addr(host, port);
    if (rhema_target_rule_parse(text, &r, err) != 0)
        fail_msg("'%s' did not parse: %s", text, err);
    return rhema_target_rule_match(&r, (struct sockaddr *)&ss);
}

static void ipv4_blocks_and_ports(void **state)
{
    (void)state;
    assert_true(admits("10.0.0.0/8", "10.255.1.2", 1));
    assert_true(admits("10.0.0.0/8", "10.0.0.0", 65535));
    assert_false(admits("10.0.0.0/8", "11.0.0.0", 80));
    assert_false(admits("10.0.0.0/8", "9.255.255.255", 80));
    assert_true(admits("127.0.0.1", "127.0.0.1", 8080)); /* no /N: one address, every port */
    assert_false(admits("127.0.0.1", "127.0.0.2", 8080));
    assert_true(admits("127.0.0.1:8080", "127.0.0.1", 8080));
    assert_false(admits("127.0.0.1:8080", "127.0.0.1", 8081));
    assert_true(admits("192.168.1.0/24:8000-8099", "192.168.1.77", 8000));
    assert_true(admits("192.168.1.0/24:8000-8099", "192.168.1.77", 8099));
    assert_false(admits("192.168.1.0/24:8000-8099", "192.168.1.77", 7999));
    assert_false(admits("192.168.1.0/24:8000-8099", "192.168.1.77", 8100));
    assert_false(admits("192.168.1.0/24:8000-8099", "192.168.2.77", 8050));
    assert_true(admits("0.0.0.0/0", "203.0.113.9", 443));
    assert_true(admits("172.16.0.0/12", "172.31.255.255", 1));
    assert_false(admits("172.16.0.0/12", "172.32.0.0", 1));
    assert_true(admits("10.1.2.3/32:1-65535", "10.1.2.3", 65535));
    /* a non-octet prefix: /27 is .0 - .31 */
    assert_true(admits("198.51.100.0/27", "198.51.100.31", 9));
    assert_false(admits("198.51.100.0/27", "198.51.100.32", 9));
}

static void ipv6_blocks_and_ports(void **state)
{
    (void)state;
    assert_true(admits("fd00::/8", "fdab::1", 80));
    assert_false(admits("fd00::/8", "fe80::1", 80));
    assert_true(admits("[fd00::/8]:443", "fd12:3456::9", 443));
    assert_false(admits("[fd00::/8]:443", "fd12:3456::9", 444));
    assert_true(admits("[::1]:9000-9010", "::1", 9005));
    assert_true(admits("[::1]:9000-9010", "[::1]", 9010)); /* brackets in the target too */
    assert_false(admits("[::1]:9000-9010", "::2", 9005));
    assert_true(admits("2001:db8::/32", "2001:db8:ffff::1", 1));
    assert_false(admits("2001:db8::/32", "2001:db9::1", 1));
    assert_true(admits("2001:db8::/33", "2001:db8:7fff::", 1));
    assert_false(admits("2001:db8::/33", "2001:db8:8000::", 1));
    /* families never cross */
    assert_false(admits("::/0", "127.0.0.1", 80));
    assert_false(admits("0.0.0.0/0", "::1", 80));
}

static void ipv4_mapped_is_ipv4(void **state)
{
    (void)state;
    /* a mapped target is its IPv4 address ... */
    assert_true(admits("127.0.0.0/8", "::ffff:127.0.0.1", 80));
    assert_false(admits("::/0", "::ffff:127.0.0.1", 80));
    /* ... and so is a mapped rule (prefix minus 96) */
    assert_true(admits("::ffff:10.0.0.0/104", "10.9.9.9", 80));
    assert_true(admits("[::ffff:10.0.0.0/104]:80", "::ffff:10.9.9.9", 80));
    assert_false(admits("::ffff:10.0.0.0/104", "11.0.0.1", 80));

    struct sockaddr_storage a = addr("127.0.0.1", 80), b = addr("::ffff:127.0.0.1", 80),
                            c = addr("127.0.0.1", 81);
    assert_true(rhema_target_same((struct sockaddr *)&a, (struct sockaddr *)&b));
    assert_false(rhema_target_same((struct sockaddr *)&a, (struct sockaddr *)&c));
    char buf[64];
    rhema_target_format((struct sockaddr *)&b, buf, sizeof buf);
    assert_string_equal(buf, "127.0.0.1:80");
    struct sockaddr_storage d = addr("fd00::1", 443);
    rhema_target_format((struct sockaddr *)&d, buf, sizeof buf);
    assert_string_equal(buf, "[fd00::1]:443");
}

static void refused_with_a_message(void **state)
{
    (void)state;
    static const struct {
        const char *text, *says;
    } bad[] = {
        {"", "empty"},
        {"localhost", "expected an IP address or CIDR block"},
        {"10.0.0.0/33", "prefix length must be 0..32"},
        {"fd00::/129", "prefix length must be 0..128"},
        {"10.0.0.0/x", "prefix length is not a number"},
        {"10.0.0.0/", "prefix length is not a number"},
        {"10.0.0.1/8", "bits set beyond the /8 prefix"},
        {"fd00::1/8", "bits set beyond the /8 prefix"},
        {"10.0.0.0/8:0", "a port 1..65535"},
        {"10.0.0.0/8:65536", "a port 1..65535"},
        {"10.0.0.0/8:90-80", "a port 1..65535 or a range"},
        {"10.0.0.0/8:", "a port 1..65535"},
        {"10.0.0.0/8:80-", "a port 1..65535"},
        {"10.0.0.0/8:http", "a port 1..65535"},
        {"[fd00::/8]443", "expected an IP address"},
        {"[fd00::/8", "expected an IP address"},
        {"1.2.3", "expected an IP address"},
        {"10.0.0.0/8 ", "prefix length is not a number"}, /* trailing junk is not ignored */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct rhema_target_rule r;
        char err[RHEMA_ERRMSG_MAX] = "";
        if (rhema_target_rule_parse(bad[i].text, &r, err) != RHEMA_EINVAL)
            fail_msg("'%s' parsed", bad[i].text);
        if (!strstr(err, bad[i].says))
            fail_msg("'%s': '%s' does not say '%s'", bad[i].text, err, bad[i].says);
    }
}

static void lists(void **state)
{
    (void)state;
    const char *texts[] = {"10.0.0.0/8:80", "[::1]:8000-8100"};
    const char *badlist[] = {"10.0.0.0/8", "nonsense"};
    struct rhema_target_list l;
    char err[RHEMA_ERRMSG_MAX];
    assert_int_equal(rhema_target_list_parse(&l, texts, 2, err), 0);
    assert_int_equal(l.n, 2);
    struct sockaddr_storage a = addr("10.2.3.4", 80), b = addr("::1", 8050), c = addr("::1", 80);
    assert_true(rhema_target_list_match(&l, (struct sockaddr *)&a));
    assert_true(rhema_target_list_match(&l, (struct sockaddr *)&b));
    assert_false(rhema_target_list_match(&l, (struct sockaddr *)&c)); /* 80 is 10/8's port only */
    assert_true(rhema_target_list_port_ok(&l, 80));
    assert_true(rhema_target_list_port_ok(&l, 8100));
    assert_false(rhema_target_list_port_ok(&l, 443));
    rhema_target_list_release(&l);
    assert_int_equal(l.n, 0);
    assert_int_equal(rhema_target_list_parse(&l, badlist, 2, err), RHEMA_EINVAL);
    assert_non_null(strstr(err, "'nonsense'"));
    assert_int_equal(l.n, 0);
    assert_null(l.v);
    /* the empty list admits nothing */
    assert_int_equal(rhema_target_list_parse(&l, NULL, 0, err), 0);
    assert_false(rhema_target_list_match(&l, (struct sockaddr *)&a));
    assert_false(rhema_target_list_port_ok(&l, 80));
}

static void sockaddr_of_literals_only(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(rhema_target_sockaddr("localhost", 80, &ss, &len), -1);
    assert_int_equal(rhema_target_sockaddr("10.0.0.1", 0, &ss, &len), -1);
    assert_int_equal(rhema_target_sockaddr("10.0.0.1", 65536, &ss, &len), -1);
    assert_int_equal(rhema_target_sockaddr("[]", 80, &ss, &len), -1);
    assert_int_equal(rhema_target_sockaddr("::ffff:1.2.3.4", 80, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(rhema_target_sockaddr("[2001:db8::1]", 80, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ipv4_blocks_and_ports),
        cmocka_unit_test(ipv6_blocks_and_ports),
        cmocka_unit_test(ipv4_mapped_is_ipv4),
        cmocka_unit_test(refused_with_a_message),
        cmocka_unit_test(lists),
        cmocka_unit_test(sockaddr_of_literals_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
