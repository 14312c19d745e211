"""Budgets, route tables and route resolution: which subnetwork a request runs."""

from routing.budget import TIERS, Budget, BudgetError
from routing.resolve import Plan, RouteEntry, RouteTables, UnsatisfiableBudget

__all__ = ["TIERS", "Budget", "BudgetError", "Plan", "RouteEntry", "RouteTables", "UnsatisfiableBudget"]
