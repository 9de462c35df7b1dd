import Common
