/* A shared object that is not a rhema plugin: it lacks rhema_plugin_init. */
int rhema_plugin_inti(void);
int rhema_plugin_inti(void) { return 0; }
