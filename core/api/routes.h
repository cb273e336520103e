/*
 * routes -- the HTTP API: path matching and the handlers of each area.
 */
#ifndef RHEMA_CORE_ROUTES_H
#define RHEMA_CORE_ROUTES_H

#include "http.h"

/* Dispatch a request to its handler (or reply 404 / 405). */
void rhema_route(struct rhema_req *r);

#endif /* RHEMA_CORE_ROUTES_H */
