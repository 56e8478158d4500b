// Package deploy holds no code: its tests check what Sluice ships for
// deployment (images, the Helm chart, the Compose file, alert rules and
// the dashboard) with the real tools.
package deploy
