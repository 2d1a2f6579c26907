mod aliases;
mod cli;
mod edge_security;
mod events;
mod hardening;
mod proxy;
mod support;
mod watcher;
