/*
 * balancer_check -- see balancer_check.h.
 */
#include "balancer_check.h"

int rhema_endpoints_valid(const struct rhema_endpoint *eps, size_t n)
{
    return n == 0 || (eps != NULL && eps->size >= RHEMA_ENDPOINT_SIZE_0);
}
