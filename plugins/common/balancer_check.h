/*
 * balancer_check -- the argument check every balancer plugin makes in
 * update() (private to plugins/, in librhema_plugin_util.la; not ABI).
 */
#ifndef RHEMA_PLUGIN_BALANCER_CHECK_H
#define RHEMA_PLUGIN_BALANCER_CHECK_H

#include <stddef.h>

#include <rhema/balancer.h>

/* 1 when update() may read eps[0..n): n == 0, or a non-NULL array whose stride covers minor 0. */
int rhema_endpoints_valid(const struct rhema_endpoint *eps, size_t n);

#endif /* RHEMA_PLUGIN_BALANCER_CHECK_H */
