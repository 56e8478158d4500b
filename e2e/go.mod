module github.com/sluicehq/sluice/e2e

go 1.26.0
